//! What the shim knows about the program's descriptors.
//!
//! A flat array of atomic flag bytes answers "does the shim care about this fd?" without a
//! lock, so the hot pass-through path (close, sendto, epoll_ctl of ordinary fds) costs one
//! load. Details live in [`Table`] (under the state lock): several fds may share one socket
//! (`dup`), and the socket's state goes when the last of them is closed.

use crate::stream::Stream;
use libc::c_int;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

/// Descriptors at or above this are tracked through the table alone (flags report "look").
pub const FLAGS_LEN: usize = 1 << 16;

/// An inet stream socket made by `socket()` and not connected yet: `epoll_ctl` and buffer
/// sizes are recorded so a transplant can carry them over.
pub const CANDIDATE: u8 = 1;
/// Has an entry in [`Table`].
pub const TRACKED: u8 = 2;
/// One of the shim's own descriptors (control socket, log, ring eventfd): protected from the
/// program.
pub const PRIVATE: u8 = 4;
/// A session in ring mode: its read/write family goes through `rings`.
pub const RING: u8 = 8;
/// The eventfd of a ring (with [`PRIVATE`]).
pub const RING_WAKE: u8 = 16;
/// A run of `MSG_MORE` writes is under way on this session: the daemon holds it corked
/// until a write without the flag.
pub const MORE: u8 = 32;

static FLAGS: [AtomicU8; FLAGS_LEN] = [const { AtomicU8::new(0) }; FLAGS_LEN];

/// Lowest number the shim's own descriptors are moved to, out of the way of programs that
/// expect the lowest free descriptors.
pub const PRIVATE_FD_BASE: c_int = 700;

pub fn flags(fd: c_int) -> u8 {
    match usize::try_from(fd) {
        Ok(i) if i < FLAGS_LEN => FLAGS[i].load(Ordering::Acquire),
        Ok(_) => TRACKED,
        Err(_) => 0,
    }
}

fn update(fd: c_int, set: u8, clear: u8) {
    if let Ok(i) = usize::try_from(fd) {
        if i < FLAGS_LEN {
            let f = &FLAGS[i];
            let mut cur = f.load(Ordering::Relaxed);
            loop {
                let new = (cur | set) & !clear;
                match f.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(now) => cur = now,
                }
            }
        }
    }
}

pub fn mark_candidate(fd: c_int, on: bool) {
    if on {
        update(fd, CANDIDATE, 0)
    } else {
        update(fd, 0, CANDIDATE)
    }
}

pub fn mark_more(fd: c_int, on: bool) {
    if on {
        update(fd, MORE, 0)
    } else {
        update(fd, 0, MORE)
    }
}

pub fn mark_private(fd: c_int, on: bool) {
    if on {
        update(fd, PRIVATE, 0)
    } else {
        update(fd, 0, PRIVATE)
    }
}

pub fn mark_ring(fd: c_int, on: bool) {
    if on {
        update(fd, RING, 0)
    } else {
        update(fd, 0, RING)
    }
}

pub fn mark_ring_wake(fd: c_int, on: bool) {
    if on {
        update(fd, RING_WAKE, 0)
    } else {
        update(fd, 0, RING_WAKE)
    }
}

/// One of the shim's own descriptors, still open (checked by inode: the program may have
/// closed it behind our back and reused the number).
pub fn is_private(fd: c_int) -> bool {
    flags(fd) & PRIVATE != 0
        && (crate::control::owns(fd) || crate::log::owns(fd) || crate::rings::owns_wake(fd))
}

/// An epoll registration recorded before a transplant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollReg {
    pub epfd: c_int,
    pub events: u32,
    pub data: u64,
}

/// What a not-yet-connected inet stream socket carries into a transplant.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    pub epoll: Vec<EpollReg>,
    /// `SO_SNDBUF`/`SO_RCVBUF` the program asked for (the kernel's doubled value is not it).
    pub sndbuf: Option<c_int>,
    pub rcvbuf: Option<c_int>,
}

#[derive(Debug)]
pub enum Kind {
    Unconnected(Carry),
    /// A transplanted overlay session (connected out, or accepted).
    Stream(Box<Stream>),
    /// A kernel listener registered with the daemon.
    Listener {
        port: u16,
        /// The process that registered it (only it unregisters).
        owner: libc::pid_t,
        carry: Carry,
    },
    /// A kernel UDP socket the overlay serves: registered for overlay datagrams, and/or a
    /// multicast member or sender.
    Dgram {
        /// The port registered with the daemon for overlay datagrams, once it is.
        port: Option<u16>,
        /// The process that registered the port (only it unregisters).
        owner: libc::pid_t,
        /// The overlay endpoint it is `connect()`ed to (through a proxy), if any.
        remote: Option<weft_core::Endpoint>,
        /// Group memberships and multicast send options, if the program used any.
        groups: Option<Box<crate::multicast::SocketGroups>>,
    },
    /// An unnamed AF_UNIX socket the daemon does not know (probed once).
    Foreign,
}

struct Sock {
    refs: u32,
    kind: Kind,
}

#[derive(Default)]
pub struct Table {
    fds: BTreeMap<c_int, u64>,
    socks: BTreeMap<u64, Sock>,
    next: u64,
}

impl Table {
    pub const fn new() -> Table {
        Table {
            fds: BTreeMap::new(),
            socks: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn get(&self, fd: c_int) -> Option<&Kind> {
        self.fds
            .get(&fd)
            .and_then(|id| self.socks.get(id))
            .map(|s| &s.kind)
    }

    pub fn get_mut(&mut self, fd: c_int) -> Option<&mut Kind> {
        let id = self.fds.get(&fd)?;
        self.socks.get_mut(id).map(|s| &mut s.kind)
    }

    /// Gives `fd` a state of its own; what it shared before is detached (and returned if it was
    /// the last reference).
    pub fn set(&mut self, fd: c_int, kind: Kind) -> Option<Kind> {
        if let Some(id) = self.fds.get(&fd) {
            if let Some(s) = self.socks.get_mut(id) {
                if s.refs == 1 {
                    s.kind = kind;
                    return None;
                }
            }
        }
        let old = self.detach(fd);
        let id = self.next;
        self.next += 1;
        self.socks.insert(id, Sock { refs: 1, kind });
        self.fds.insert(fd, id);
        update(fd, TRACKED, 0);
        old
    }

    /// Forgets `fd`; returns its socket's state when no other fd shares it.
    pub fn detach(&mut self, fd: c_int) -> Option<Kind> {
        update(fd, 0, TRACKED | CANDIDATE);
        let id = self.fds.remove(&fd)?;
        let sock = self.socks.get_mut(&id)?;
        sock.refs = sock.refs.saturating_sub(1);
        if sock.refs == 0 {
            self.socks.remove(&id).map(|s| s.kind)
        } else {
            None
        }
    }

    /// `new` now refers to the same socket as `old` (dup). Returns what `new` released.
    pub fn share(&mut self, old: c_int, new: c_int) -> Option<Kind> {
        let released = self.detach(new);
        if let Some(&id) = self.fds.get(&old) {
            if let Some(s) = self.socks.get_mut(&id) {
                // Before a transplant the two fds would part ways: nothing to share.
                if !matches!(s.kind, Kind::Unconnected(_)) {
                    s.refs += 1;
                    self.fds.insert(new, id);
                    update(new, TRACKED, 0);
                }
            }
        }
        released
    }

    /// The tracked fds in `[first, last]`.
    pub fn fds_in(&self, first: c_int, last: c_int) -> Vec<c_int> {
        self.fds.range(first..=last).map(|(fd, _)| *fd).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_state_lives_until_the_last_fd() {
        let mut t = Table::new();
        let dgram = || Kind::Dgram {
            port: Some(9),
            owner: 1,
            remote: None,
            groups: None,
        };
        assert!(t.set(40_000, dgram()).is_none());
        assert!(t.share(40_000, 40_001).is_none());
        assert!(matches!(
            t.get(40_001),
            Some(Kind::Dgram { port: Some(9), .. })
        ));
        assert!(t.detach(40_000).is_none(), "40_001 still holds it");
        assert!(matches!(t.detach(40_001), Some(Kind::Dgram { .. })));
        assert!(t.get(40_001).is_none());
        assert_eq!(flags(40_001) & TRACKED, 0);
    }

    #[test]
    fn unconnected_sockets_are_not_shared() {
        let mut t = Table::new();
        t.set(40_010, Kind::Unconnected(Carry::default()));
        t.share(40_010, 40_011);
        assert!(t.get(40_011).is_none());
        // Replacing the state of a sole owner keeps one entry.
        assert!(t.set(40_010, Kind::Foreign).is_none());
        assert_eq!(t.fds_in(40_000, 40_100), vec![40_010]);
    }
}
