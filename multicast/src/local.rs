//! This node's own memberships, per local socket, with the kernel's error semantics, and their
//! aggregate per group (what the node's flooded record says).

use crate::record::{Membership, SourceFilter, MAX_SOURCES};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use thiserror::Error;
use weft_core::NodeId;

/// Names one application socket that joined groups. The daemon picks the value (for example
/// the kernel address it delivers that socket's datagrams to, via `From<SocketAddrV4>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub u64);

impl From<SocketAddrV4> for SocketId {
    fn from(a: SocketAddrV4) -> Self {
        SocketId((u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()))
    }
}

/// Why a local join or leave was refused; [`JoinError::errno`] is what the kernel returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum JoinError {
    #[error("{0} is not a multicast group address")]
    NotMulticast(NodeId),
    #[error("{0} is a multicast address and cannot be a source")]
    MulticastSource(NodeId),
    #[error("the socket already joined this group (or this source)")]
    AlreadyJoined,
    #[error("the socket has not joined this group (or this source)")]
    NotJoined,
    /// Any-source and source-specific operations mixed on one socket and group.
    #[error("any-source and source-specific membership mixed on one socket")]
    ModeConflict,
    #[error("more than {MAX_SOURCES} sources for one group on this node")]
    TooManySources,
}

impl JoinError {
    pub fn errno(self) -> i32 {
        match self {
            JoinError::NotMulticast(_) | JoinError::MulticastSource(_) => libc::EINVAL,
            JoinError::AlreadyJoined => libc::EADDRINUSE,
            JoinError::NotJoined => libc::EADDRNOTAVAIL,
            JoinError::ModeConflict => libc::EINVAL,
            JoinError::TooManySources => libc::ENOBUFS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SocketJoin {
    sources: SourceFilter,
    /// Sticky for the life of the membership: set if any join on it asked for reliability.
    reliable: bool,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LocalMemberships {
    groups: BTreeMap<NodeId, BTreeMap<SocketId, SocketJoin>>,
    sockets: BTreeMap<SocketId, BTreeSet<NodeId>>,
}

impl LocalMemberships {
    /// `source: None` is an any-source join, `Some(s)` adds `s` to the socket's source list.
    pub(crate) fn join(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<(), JoinError> {
        if !group.is_multicast() {
            return Err(JoinError::NotMulticast(group));
        }
        if let Some(s) = source.filter(|s| s.is_multicast()) {
            return Err(JoinError::MulticastSource(s));
        }
        if let Some(source) = source {
            if self.would_exceed_sources(group, source) {
                return Err(JoinError::TooManySources);
            }
        }
        let sockets = self.groups.entry(group).or_default();
        match (sockets.get_mut(&socket), source) {
            (None, None) => {
                sockets.insert(
                    socket,
                    SocketJoin {
                        sources: SourceFilter::Any,
                        reliable,
                    },
                );
            }
            (None, Some(s)) => {
                let sources = SourceFilter::Only(BTreeSet::from([s]));
                sockets.insert(socket, SocketJoin { sources, reliable });
            }
            (Some(_), None) => return Err(JoinError::AlreadyJoined),
            (Some(join), Some(s)) => match &mut join.sources {
                SourceFilter::Any => return Err(JoinError::ModeConflict),
                SourceFilter::Only(list) => {
                    if !list.insert(s) {
                        return Err(JoinError::AlreadyJoined);
                    }
                    join.reliable |= reliable;
                }
            },
        }
        self.sockets.entry(socket).or_default().insert(group);
        Ok(())
    }

    fn would_exceed_sources(&self, group: NodeId, source: NodeId) -> bool {
        match self.aggregate(group) {
            Membership::Present {
                sources: SourceFilter::Only(list),
                ..
            } => !list.contains(&source) && list.len() >= MAX_SOURCES,
            _ => false,
        }
    }

    /// `source: None` drops the socket's whole membership of the group (as `IP_DROP_MEMBERSHIP`
    /// does even for a source-specific one); `Some(s)` drops one source.
    pub(crate) fn leave(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<(), JoinError> {
        let sockets = self.groups.get_mut(&group).ok_or(JoinError::NotJoined)?;
        let join = sockets.get_mut(&socket).ok_or(JoinError::NotJoined)?;
        let socket_done = match (source, &mut join.sources) {
            (None, _) => true,
            (Some(_), SourceFilter::Any) => return Err(JoinError::ModeConflict),
            (Some(s), SourceFilter::Only(list)) => {
                if !list.remove(&s) {
                    return Err(JoinError::NotJoined);
                }
                list.is_empty()
            }
        };
        if socket_done {
            self.remove(socket, group);
        }
        Ok(())
    }

    fn remove(&mut self, socket: SocketId, group: NodeId) {
        if let Some(sockets) = self.groups.get_mut(&group) {
            sockets.remove(&socket);
            if sockets.is_empty() {
                self.groups.remove(&group);
            }
        }
        if let Some(groups) = self.sockets.get_mut(&socket) {
            groups.remove(&group);
            if groups.is_empty() {
                self.sockets.remove(&socket);
            }
        }
    }

    /// Drops every membership of a closed socket; returns the groups it had joined.
    pub(crate) fn close(&mut self, socket: SocketId) -> Vec<NodeId> {
        let groups: Vec<NodeId> = self
            .sockets
            .get(&socket)
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default();
        for &group in &groups {
            self.remove(socket, group);
        }
        groups
    }

    /// The node's membership of `group`: any-source if any socket wants any source, else the
    /// union of the source lists; reliable if any socket asked; absent with no socket.
    pub(crate) fn aggregate(&self, group: NodeId) -> Membership {
        let Some(sockets) = self.groups.get(&group) else {
            return Membership::Absent;
        };
        let reliable = sockets.values().any(|j| j.reliable);
        let mut union = BTreeSet::new();
        for join in sockets.values() {
            match &join.sources {
                SourceFilter::Any => {
                    return Membership::Present {
                        sources: SourceFilter::Any,
                        reliable,
                    }
                }
                SourceFilter::Only(list) => union.extend(list.iter().copied()),
            }
        }
        if union.is_empty() {
            // Unreachable by construction (empty lists are removed), but never flood one.
            return Membership::Absent;
        }
        Membership::Present {
            sources: SourceFilter::Only(union),
            reliable,
        }
    }

    /// Local sockets that joined `group` and accept `source`, in id order.
    pub(crate) fn receivers(
        &self,
        group: NodeId,
        source: NodeId,
    ) -> impl Iterator<Item = SocketId> + '_ {
        self.groups
            .get(&group)
            .into_iter()
            .flat_map(move |s| s.iter().filter(move |(_, j)| j.sources.accepts(source)))
            .map(|(&socket, _)| socket)
    }

    pub(crate) fn sockets_in(&self, group: NodeId) -> usize {
        self.groups.get(&group).map_or(0, |s| s.len())
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.groups.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: NodeId = NodeId(0xef01_0001);
    const S1: NodeId = NodeId(0x0a00_0001);
    const S2: NodeId = NodeId(0x0a00_0002);
    const A: SocketId = SocketId(1);
    const B: SocketId = SocketId(2);

    fn only(list: &[NodeId], reliable: bool) -> Membership {
        Membership::Present {
            sources: SourceFilter::Only(list.iter().copied().collect()),
            reliable,
        }
    }

    #[test]
    fn aggregate_is_any_source_if_one_socket_wants_it() {
        let mut local = LocalMemberships::default();
        local.join(A, G, Some(S1), false).expect("join");
        assert_eq!(local.aggregate(G), only(&[S1], false));
        local.join(B, G, None, true).expect("join");
        assert_eq!(
            local.aggregate(G),
            Membership::Present {
                sources: SourceFilter::Any,
                reliable: true
            }
        );
        local.leave(B, G, None).expect("leave");
        assert_eq!(local.aggregate(G), only(&[S1], false));
        local.join(B, G, Some(S2), false).expect("join");
        assert_eq!(local.aggregate(G), only(&[S1, S2], false));
        assert_eq!(local.receivers(G, S2).collect::<Vec<_>>(), vec![B]);
        local.leave(A, G, Some(S1)).expect("leave");
        local.leave(B, G, Some(S2)).expect("leave");
        assert_eq!(local.aggregate(G), Membership::Absent);
        assert_eq!(local.groups().count(), 0);
    }

    #[test]
    fn kernel_error_semantics() {
        let mut local = LocalMemberships::default();
        assert_eq!(
            local.join(A, S1, None, false),
            Err(JoinError::NotMulticast(S1))
        );
        assert_eq!(
            local.join(A, G, Some(G), false),
            Err(JoinError::MulticastSource(G))
        );
        assert_eq!(local.leave(A, G, None), Err(JoinError::NotJoined));
        local.join(A, G, None, false).expect("join");
        assert_eq!(local.join(A, G, None, false), Err(JoinError::AlreadyJoined));
        assert_eq!(
            local.join(A, G, Some(S1), false),
            Err(JoinError::ModeConflict)
        );
        assert_eq!(local.leave(A, G, Some(S1)), Err(JoinError::ModeConflict));
        local.join(B, G, Some(S1), false).expect("join");
        assert_eq!(
            local.join(B, G, Some(S1), false),
            Err(JoinError::AlreadyJoined)
        );
        assert_eq!(local.leave(B, G, Some(S2)), Err(JoinError::NotJoined));
        assert_eq!(JoinError::AlreadyJoined.errno(), libc::EADDRINUSE);
        assert_eq!(JoinError::NotJoined.errno(), libc::EADDRNOTAVAIL);
    }

    #[test]
    fn source_list_is_capped() {
        let mut local = LocalMemberships::default();
        for i in 0..MAX_SOURCES as u32 {
            local
                .join(
                    SocketId(u64::from(i)),
                    G,
                    Some(NodeId(0x0a00_0000 + i)),
                    false,
                )
                .expect("join");
        }
        let extra = NodeId(0x0b00_0000);
        assert_eq!(
            local.join(A, G, Some(extra), false),
            Err(JoinError::TooManySources)
        );
        // A source already in the union does not grow it.
        local
            .join(SocketId(9999), G, Some(NodeId(0x0a00_0000)), false)
            .expect("join");
    }

    #[test]
    fn closing_a_socket_drops_all_its_groups() {
        let mut local = LocalMemberships::default();
        let g2 = NodeId(0xef01_0002);
        local.join(A, G, None, false).expect("join");
        local.join(A, g2, Some(S1), false).expect("join");
        local.join(B, g2, None, false).expect("join");
        assert_eq!(local.close(A), vec![G, g2]);
        assert_eq!(local.aggregate(G), Membership::Absent);
        assert!(local.aggregate(g2).is_present());
        assert_eq!(local.sockets_in(g2), 1);
        assert!(local.close(A).is_empty());
    }
}
