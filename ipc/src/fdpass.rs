//! One control record with at most one file descriptor, over a `SOCK_SEQPACKET` Unix socket.
//! Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`), so none leaks into a program
//! the application execs.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const CMSG_SPACE_ONE_FD: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE_ONE_FD]);

/// Sends `data` as one record, with `fd` attached if given. `MSG_NOSIGNAL`: a dead peer is an
/// `EPIPE` error, never a signal to the application.
pub fn send_record(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_ONE_FD]);
    // SAFETY: msghdr is plain data; every pointer in it refers to locals that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer is large and aligned enough for one SCM_RIGHTS fd.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space;
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr) as *mut RawFd, fd);
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
    pub fd: Option<OwnedFd>,
    /// The record was longer than the buffer (and was cut): treat it as malformed.
    pub truncated: bool,
}

/// Receives one record into `buf`. `Ok(len == 0, no fd)` at end of stream. Extra descriptors
/// beyond the first are closed. `flags` may add `MSG_DONTWAIT`.
pub fn recv_record(sock: RawFd, buf: &mut [u8], flags: i32) -> io::Result<Record> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_ONE_FD]);
    // SAFETY: as in send_record.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE_ONE_FD;
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
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into our buffer.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr) as *const RawFd;
                let count =
                    ((*hdr).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    let owned = OwnedFd::from_raw_fd(raw);
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    Ok(Record {
        len: n,
        fd,
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

    #[test]
    fn passes_a_descriptor_with_a_record() {
        let (a, b) = seqpacket_pair();
        let (x, _y) = seqpacket_pair();
        send_record(a.as_raw_fd(), b"hello", Some(x.as_raw_fd())).unwrap();
        let mut buf = [0u8; 16];
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..rec.len], b"hello");
        let got = rec.fd.expect("fd passed");
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        assert!(!rec.truncated);
        send_record(a.as_raw_fd(), b"0123456789abcdefXYZ", None).unwrap();
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert!(rec.truncated);
        drop(a);
        let rec = recv_record(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!(rec.len, 0);
    }
}
