//! One control record with a few file descriptors, over a `SOCK_SEQPACKET` Unix socket.
//! Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`), so none leaks into a program
//! the application execs. A ring session needs three at once (socketpair end, memfd, eventfd),
//! so a record carries up to [`MAX_FDS`].

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Most descriptors one record carries; a sender with more is refused, extra received ones
/// are closed.
pub const MAX_FDS: usize = 4;

const CMSG_SPACE_FDS: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE_FDS]);

/// Sends `data` as one record, with `fds` attached (at most [`MAX_FDS`]). `MSG_NOSIGNAL`: a
/// dead peer is an `EPIPE` error, never a signal to the application.
pub fn send_record(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one record",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_FDS]);
    // SAFETY: msghdr is plain data; every pointer in it refers to locals that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: the control buffer is aligned and large enough for MAX_FDS descriptors
        // (CMSG_SPACE(16) = 32 <= 64), and `fds` holds exactly `payload` bytes.
        unsafe {
            msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(payload) as usize;
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(hdr),
                payload as usize,
            );
        }
    }
    loop {
        // SAFETY: msg is fully initialised above.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return if n as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short control record",
                ))
            };
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Outcome of [`recv_record`].
#[derive(Debug)]
pub struct Record {
    pub len: usize,
    /// The descriptors that came with the record, in the order they were sent.
    pub fds: Vec<OwnedFd>,
    /// The record (or its descriptors) did not fit: treat it as malformed.
    pub truncated: bool,
}

impl Record {
    /// End of stream: nothing at all arrived.
    pub fn is_eof(&self) -> bool {
        self.len == 0 && self.fds.is_empty()
    }

    /// The first descriptor, if any (the others are dropped, i.e. closed).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds.swap_remove(0))
        }
    }
}

/// Receives one record into `buf`. `Ok(len == 0, no fds)` at end of stream. Descriptors
/// beyond [`MAX_FDS`] are closed. `flags` may add `MSG_DONTWAIT`.
pub fn recv_record(sock: RawFd, buf: &mut [u8], flags: i32) -> io::Result<Record> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_FDS]);
    // SAFETY: as in send_record.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE_FDS;
    let n = loop {
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into our buffer; every
    // descriptor in an SCM_RIGHTS message is ours to own (and close) from now on.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr) as *const RawFd;
                let count =
                    ((*hdr).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let owned = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fds.len() < MAX_FDS {
                        fds.push(owned);
                    }
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    Ok(Record {
        len: n,
        fds,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two ints.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: the kernel just gave us these two descriptors.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn inode(fd: RawFd) -> u64 {
        // SAFETY: fstat into a zeroed buffer.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            st.st_ino
        }
    }

    #[test]
    fn passes_a_descriptor_with_a_record() {
        let (a, b) = seqpacket_pair();
        let (x, _y) = seqpacket_pair();
        send_record(a.as_raw_fd(), b"hello", &[x.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let mut rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..rec.len], b"hello");
        let got = rec.take_fd().expect("fd passed");
        assert_eq!(inode(got.as_raw_fd()), inode(x.as_raw_fd()));
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        assert!(!rec.truncated);
        send_record(a.as_raw_fd(), b"0123456789abcdefXYZ", &[]).unwrap();
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert!(rec.truncated);
        drop(a);
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert!(rec.is_eof());
    }

    #[test]
    fn passes_several_descriptors_in_order() {
        let (a, b) = seqpacket_pair();
        let pairs: Vec<_> = (0..MAX_FDS).map(|_| seqpacket_pair()).collect();
        let sent: Vec<RawFd> = pairs.iter().map(|(x, _)| x.as_raw_fd()).collect();
        send_record(a.as_raw_fd(), b"three", &sent).unwrap();
        let mut buf = [0u8; 16];
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..rec.len], b"three");
        let got: Vec<u64> = rec.fds.iter().map(|f| inode(f.as_raw_fd())).collect();
        let want: Vec<u64> = sent.iter().map(|&f| inode(f)).collect();
        assert_eq!(got, want);
        let too_many: Vec<RawFd> = vec![sent[0]; MAX_FDS + 1];
        assert!(send_record(a.as_raw_fd(), b"x", &too_many).is_err());
    }
}
