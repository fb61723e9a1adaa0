//! sendto, sendmsg, sendmmsg (overlay destinations → proxies) and recvfrom, __recvfrom_chk,
//! recvmsg, recvmmsg (proxy sources → overlay endpoints). Addresses only: the payload never
//! passes through the shim.

use super::{data, hook};
use crate::dgram::{self, Dest};
use crate::guard::{fail, KeepErrno};
use crate::{addr, real, rings};
use libc::{
    c_int, c_uint, c_void, mmsghdr, msghdr, size_t, sockaddr, sockaddr_storage, socklen_t, ssize_t,
};

hook! {
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t {
        crate::stream::more_before(fd, flags);
        let r = if rings::is_ring(fd) {
            data::ring_sendto(fd, buf, n, flags)
        } else {
            match dgram::destination(fd, addr, len) {
                Dest::Keep => real::sendto(fd, buf, n, flags, addr, len),
                Dest::Strip => real::sendto(fd, buf, n, flags, std::ptr::null(), 0),
                Dest::Replace(ss, sl) => real::sendto(fd, buf, n, flags, &ss as *const _ as *const sockaddr, sl),
                Dest::Fail(e) => fail(e) as ssize_t,
            }
        };
        crate::stream::more_after(fd, flags);
        r
    }

    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
        data::revoke_passed(msg);
        if !msg.is_null() && rings::is_ring(fd) {
            if let Some(r) = data::ring_sendmsg(fd, msg, flags) {
                return r;
            }
        }
        if msg.is_null() || (*msg).msg_name.is_null() {
            return real::sendmsg(fd, msg, flags);
        }
        let mut copy = *msg;
        let storage;
        match dgram::destination(fd, (*msg).msg_name as *const sockaddr, (*msg).msg_namelen) {
            Dest::Keep => return real::sendmsg(fd, msg, flags),
            Dest::Strip => {
                copy.msg_name = std::ptr::null_mut();
                copy.msg_namelen = 0;
            }
            Dest::Replace(ss, sl) => {
                storage = ss;
                copy.msg_name = &storage as *const sockaddr_storage as *mut c_void;
                copy.msg_namelen = sl;
            }
            Dest::Fail(e) => return fail(e) as ssize_t,
        }
        real::sendmsg(fd, &copy, flags)
    }

    fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
        rings::detach(fd);
        for i in 0..(vlen as usize).min(libc::UIO_MAXIOV as usize) {
            if !msgs.is_null() {
                data::revoke_passed(&(*msgs.add(i)).msg_hdr);
            }
        }
        sendmmsg_hook(fd, msgs, vlen, flags)
    }

    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t {
        if rings::is_ring(fd) {
            if let Some(r) = data::ring_recvfrom(fd, buf, n, flags, addr, len) {
                return r;
            }
        }
        if addr.is_null() || len.is_null() || (*len as i32) < 0 {
            return real::recvfrom(fd, buf, n, flags, addr, len);
        }
        let mut ss: sockaddr_storage = std::mem::zeroed();
        let mut sl = std::mem::size_of::<sockaddr_storage>() as socklen_t;
        let got = real::recvfrom(fd, buf, n, flags, &mut ss as *mut _ as *mut sockaddr, &mut sl);
        if got >= 0 {
            deliver_source(&ss, sl, addr, len);
        }
        got
    }

    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t {
        if rings::is_ring(fd) && n <= buflen {
            if let Some(r) = data::ring_recvfrom(fd, buf, n, flags, addr, len) {
                return r;
            }
        }
        if addr.is_null() || len.is_null() || (*len as i32) < 0 {
            return real::__recvfrom_chk(fd, buf, n, buflen, flags, addr, len);
        }
        let mut ss: sockaddr_storage = std::mem::zeroed();
        let mut sl = std::mem::size_of::<sockaddr_storage>() as socklen_t;
        let got = real::__recvfrom_chk(fd, buf, n, buflen, flags, &mut ss as *mut _ as *mut sockaddr, &mut sl);
        if got >= 0 {
            deliver_source(&ss, sl, addr, len);
        }
        got
    }

    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
        if !msg.is_null() && rings::is_ring(fd) {
            if let Some(r) = data::ring_recvmsg(fd, msg, flags) {
                return r;
            }
        }
        if msg.is_null() || (*msg).msg_name.is_null() || ((*msg).msg_namelen as i32) < 0 {
            return real::recvmsg(fd, msg, flags);
        }
        let name = (*msg).msg_name;
        let mut room = (*msg).msg_namelen;
        let mut ss: sockaddr_storage = std::mem::zeroed();
        (*msg).msg_name = &mut ss as *mut sockaddr_storage as *mut c_void;
        (*msg).msg_namelen = std::mem::size_of::<sockaddr_storage>() as socklen_t;
        let got = real::recvmsg(fd, msg, flags);
        let sl = (*msg).msg_namelen;
        (*msg).msg_name = name;
        if got >= 0 {
            if deliver_source(&ss, sl, name as *mut sockaddr, &mut room) {
                dgram::overlay_pktinfo(msg);
            }
            (*msg).msg_namelen = room;
        } else {
            (*msg).msg_namelen = room;
        }
        got
    }

    fn recvmmsg(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int {
        rings::detach(fd);
        recvmmsg_hook(fd, msgs, vlen, flags, timeout)
    }
}

/// Copies a received source address out, as the overlay endpoint if it is a proxy (then
/// `true`).
unsafe fn deliver_source(
    ss: &sockaddr_storage,
    sl: socklen_t,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> bool {
    let _errno = KeepErrno::new();
    match dgram::overlay_source(ss, sl) {
        Some((family, a)) => {
            addr::write_out(family, a, addr, len);
            true
        }
        None => {
            addr::copy_out(ss, sl, addr, len);
            false
        }
    }
}

unsafe fn sendmmsg_hook(fd: c_int, msgs: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
    if msgs.is_null() || vlen == 0 {
        return real::sendmmsg(fd, msgs, vlen, flags);
    }
    let vlen = vlen.min(libc::UIO_MAXIOV as c_uint);
    // Per message: the name to restore, and the replacement that stands in during the call.
    let mut saved: Vec<(*mut c_void, socklen_t)> = Vec::new();
    let mut replacements: Vec<(sockaddr_storage, socklen_t)> = Vec::new();
    let mut send_count = vlen;
    for i in 0..vlen as usize {
        let h = &(*msgs.add(i)).msg_hdr;
        let dest = dgram::destination(fd, h.msg_name as *const sockaddr, h.msg_namelen);
        match dest {
            Dest::Keep => replacements.push((std::mem::zeroed(), u32::MAX)),
            Dest::Strip => replacements.push((std::mem::zeroed(), 0)),
            Dest::Replace(ss, sl) => replacements.push((ss, sl)),
            Dest::Fail(e) => {
                if i == 0 {
                    return fail(e);
                }
                // Like the kernel: send what precedes the failing message.
                send_count = i as c_uint;
                break;
            }
        }
    }
    if replacements.iter().all(|(_, sl)| *sl == u32::MAX) {
        return real::sendmmsg(fd, msgs, send_count, flags);
    }
    for (i, (ss, sl)) in replacements.iter().enumerate() {
        let h = &mut (*msgs.add(i)).msg_hdr;
        saved.push((h.msg_name, h.msg_namelen));
        match *sl {
            u32::MAX => {}
            0 => {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
            sl => {
                h.msg_name = ss as *const sockaddr_storage as *mut c_void;
                h.msg_namelen = sl;
            }
        }
    }
    let rc = real::sendmmsg(fd, msgs, send_count, flags);
    let _errno = KeepErrno::new();
    for (i, (name, namelen)) in saved.into_iter().enumerate() {
        let h = &mut (*msgs.add(i)).msg_hdr;
        h.msg_name = name;
        h.msg_namelen = namelen;
    }
    rc
}

unsafe fn recvmmsg_hook(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    if msgs.is_null() || vlen == 0 {
        return real::recvmmsg(fd, msgs, vlen, flags, timeout);
    }
    let n = (vlen as usize).min(libc::UIO_MAXIOV as usize);
    let rooms: Vec<socklen_t> = (0..n).map(|i| (*msgs.add(i)).msg_hdr.msg_namelen).collect();
    let got = real::recvmmsg(fd, msgs, vlen, flags, timeout);
    if got <= 0 {
        return got;
    }
    let _errno = KeepErrno::new();
    for (i, &room) in rooms.iter().enumerate().take(got as usize) {
        let h = &mut (*msgs.add(i)).msg_hdr;
        let written = h.msg_namelen;
        // Rewrite only names the kernel could write whole.
        if h.msg_name.is_null()
            || written > room
            || written as usize > std::mem::size_of::<sockaddr_storage>()
        {
            continue;
        }
        let mut ss: sockaddr_storage = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(
            h.msg_name as *const u8,
            &mut ss as *mut _ as *mut u8,
            written as usize,
        );
        if let Some((family, a)) = dgram::overlay_source(&ss, written) {
            let mut l = room;
            addr::write_out(family, a, h.msg_name as *mut sockaddr, &mut l);
            h.msg_namelen = l;
            dgram::overlay_pktinfo(h);
        }
    }
    got
}
