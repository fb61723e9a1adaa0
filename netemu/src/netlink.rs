//! Just enough rtnetlink to read a device's kernel counters (`RTM_GETLINK`, `IFLA_STATS64`)
//! in another namespace without spawning `ip`: the socket is opened while the thread is inside
//! that namespace and keeps talking to it afterwards. The TUN device's `tx_dropped` counts
//! packets the kernel could not queue for us, i.e. the emulator, not the link model, dropped
//! them.

use crate::sys;
use serde::Serialize;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_STATS64: u16 = 23;
const NLMSG_HEADER: usize = 16;
const IFINFOMSG: usize = 16;

/// The subset of `rtnl_link_stats64` the validity gates use.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeviceCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

pub struct RouteSocket {
    fd: OwnedFd,
    sequence: u32,
}

impl RouteSocket {
    /// Open a NETLINK_ROUTE socket bound to the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        sys::set_socket_timeouts(fd.as_raw_fd(), Duration::from_secs(1))?;
        Ok(RouteSocket { fd, sequence: 0 })
    }

    pub fn device_counters(&mut self, ifindex: u32) -> io::Result<DeviceCounters> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = [0u8; NLMSG_HEADER + IFINFOMSG];
        let total = request.len() as u32;
        request[0..4].copy_from_slice(&total.to_ne_bytes());
        request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
        request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        request[8..12].copy_from_slice(&self.sequence.to_ne_bytes());
        request[16] = libc::AF_UNSPEC as u8;
        let index = i32::try_from(ifindex).map_err(io::Error::other)?;
        request[20..24].copy_from_slice(&index.to_ne_bytes());
        let mut kernel: libc::sockaddr_nl = unsafe_zeroed_sockaddr_nl();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid buffer and address of the declared sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = vec![0u8; 16 * 1024];
        loop {
            let n = sys::read(self.fd.as_raw_fd(), &mut reply)?;
            match parse_reply(&reply[..n], self.sequence)? {
                Some(counters) => return Ok(counters),
                None => continue, // a stale reply to an earlier, timed-out request
            }
        }
    }
}

fn unsafe_zeroed_sockaddr_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply")
}

/// Parse one datagram of replies; `Ok(None)` when it answers another request.
fn parse_reply(buf: &[u8], sequence: u32) -> io::Result<Option<DeviceCounters>> {
    let mut offset = 0;
    while offset + NLMSG_HEADER <= buf.len() {
        let len = u32_at(buf, offset).ok_or_else(malformed)? as usize;
        let kind = u16_at(buf, offset + 4).ok_or_else(malformed)?;
        let seq = u32_at(buf, offset + 8).ok_or_else(malformed)?;
        if len < NLMSG_HEADER || offset + len > buf.len() {
            return Err(malformed());
        }
        let message = &buf[offset..offset + len];
        if seq == sequence {
            if kind == NLMSG_ERROR {
                let errno = u32_at(message, NLMSG_HEADER).ok_or_else(malformed)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            if kind == RTM_NEWLINK {
                return parse_link(&message[NLMSG_HEADER..]).map(Some);
            }
        }
        offset += len.div_ceil(4) * 4;
    }
    Ok(None)
}

fn parse_link(body: &[u8]) -> io::Result<DeviceCounters> {
    let mut offset = IFINFOMSG;
    while offset + 4 <= body.len() {
        let len = usize::from(u16_at(body, offset).ok_or_else(malformed)?);
        let kind = u16_at(body, offset + 2).ok_or_else(malformed)? & 0x3fff;
        if len < 4 || offset + len > body.len() {
            return Err(malformed());
        }
        if kind == IFLA_STATS64 {
            let stats = &body[offset + 4..offset + len];
            let field = |i: usize| u64_at(stats, i * 8).ok_or_else(malformed);
            return Ok(DeviceCounters {
                rx_packets: field(0)?,
                tx_packets: field(1)?,
                rx_dropped: field(6)?,
                tx_dropped: field(7)?,
            });
        }
        offset += len.div_ceil(4) * 4;
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no IFLA_STATS64 in the reply",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply_with_stats(seq: u32, stats: [u64; 8]) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&((4 + 64) as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_STATS64.to_ne_bytes());
        for s in stats {
            attr.extend_from_slice(&s.to_ne_bytes());
        }
        let len = NLMSG_HEADER + IFINFOMSG + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[0u8; IFINFOMSG]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn reads_the_counters_of_a_matching_reply() {
        let reply = reply_with_stats(7, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse_reply(&reply, 7).unwrap(),
            Some(DeviceCounters {
                rx_packets: 1,
                tx_packets: 2,
                rx_dropped: 7,
                tx_dropped: 8
            })
        );
        assert_eq!(parse_reply(&reply, 8).unwrap(), None);
    }

    #[test]
    fn reports_kernel_errors() {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let err = parse_reply(&m, 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300), seq in 0u32..4) {
            let _ = parse_reply(&bytes, seq);
        }

        #[test]
        fn never_panics_on_truncated_replies(cut in 0usize..120) {
            let reply = reply_with_stats(1, [9; 8]);
            let _ = parse_reply(&reply[..cut.min(reply.len())], 1);
        }
    }
}
