//! What the daemon must forget when the last descriptor of a registered socket goes.

use crate::fdtable::{self, Kind, CANDIDATE, TRACKED};
use crate::log::debug;
use crate::{control, state, sys};
use weft_ipc::Request;

/// Unregisters a listener or datagram port this process registered. Never called with the
/// state lock held (it talks to the daemon).
pub fn release(kind: Option<Kind>) {
    match kind {
        Some(Kind::Listener { port, owner, .. }) if owner == sys::getpid() => {
            state::lock().listen_ports.remove(&port);
            debug!("listener on port {port} closed: unlisten");
            let _ = control::request(Request::Unlisten { port });
        }
        Some(Kind::Dgram {
            port,
            owner,
            groups,
            ..
        }) => {
            if let Some(g) = groups {
                crate::multicast::release(&g);
            }
            let Some(port) = port.filter(|_| owner == sys::getpid()) else {
                return;
            };
            let last = {
                let mut st = state::lock();
                match st.dgram_ports.get_mut(&port) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        st.dgram_ports.remove(&port);
                        true
                    }
                    None => false,
                }
            };
            if last {
                debug!("last datagram socket on port {port} closed: unbind");
                let _ = control::request(Request::UnbindDatagram { port });
            }
        }
        _ => {}
    }
}

/// A descriptor number just handed out by the kernel: whatever the shim remembered under it
/// belongs to a socket closed behind our back (glibc-internal close, raw syscall).
pub fn forget_stale(fd: libc::c_int) {
    if fdtable::flags(fd) & (TRACKED | CANDIDATE) == 0 || !state::in_owner() {
        return;
    }
    fdtable::mark_candidate(fd, false);
    let released = state::lock().table.detach(fd);
    release(released);
}
