//! The daemon's overlay UDP socket, with batched receive (`recvmmsg`) and send (`sendmmsg`):
//! one system call moves many packets, which is most of the daemon's per-packet cost.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const BATCH: usize = 32;
const SLOT: usize = 65_536;

pub struct OverlaySocket {
    fd: OwnedFd,
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
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

fn set_buffer(fd: RawFd, opt: libc::c_int, force: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt with a valid int option value.
    unsafe {
        let p = &bytes as *const libc::c_int as *const libc::c_void;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, len);
        }
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
        Ok(OverlaySocket {
            fd,
            bufs: vec![0; SLOT * BATCH],
            lens: [0; BATCH],
            addrs: [to_sockaddr(&SocketAddrV4::new(0.into(), 0)); BATCH],
        })
    }

    /// Receives up to `BATCH` datagrams; returns how many (0 when none are waiting).
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        // SAFETY: every iovec points into `bufs` at a distinct SLOT-sized slice, every
        // msg_name at a distinct sockaddr_in; all outlive the call.
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
            for (len, msg) in self.lens.iter_mut().zip(&msgs).take(n as usize) {
                *len = msg.msg_len as usize;
            }

            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last batch.
    pub fn received(&self, i: usize) -> (SocketAddr, &[u8]) {
        (
            from_sockaddr(&self.addrs[i]),
            &self.bufs[i * SLOT..i * SLOT + self.lens[i]],
        )
    }

    /// Sends as many of `packets` as the socket takes; returns how many were sent (the rest
    /// should wait for writability).
    pub fn send_batch<'a>(
        &self,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        let mut addrs: Vec<libc::sockaddr_in> = Vec::with_capacity(BATCH);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        for (dst, payload) in packets.take(BATCH) {
            let SocketAddr::V4(v4) = dst else { continue };
            addrs.push(to_sockaddr(&v4));
            iovs.push(libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            });
        }
        if iovs.is_empty() {
            return Ok(0);
        }
        // SAFETY: msgs reference addrs/iovs, which are not resized while msgs lives.
        unsafe {
            let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(iovs.len());
            for i in 0..iovs.len() {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = &mut addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                msgs.push(m);
            }
            let n = libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            );
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                    // A neighbour's port being closed (ICMP) must not stop the daemon.
                    _ if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(1),
                    _ => Err(e),
                };
            }
            Ok(n as usize)
        }
    }
}

impl AsRawFd for OverlaySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
