//! This node's own memberships, per local socket, and their aggregate per group (what the
//! node's flooded record says).
//!
//! One rule set, the kernel's (`net/ipv4/igmp.c`, measured in a namespace with a multicast
//! route): [`Memberships::apply`] answers every join and leave of one socket exactly as
//! `setsockopt` does, and both the shim (sockets whose memberships it emulates) and the daemon
//! (the CLI's joins) use it. Sockets whose memberships the kernel itself holds (the shim's
//! kernel delivery) are not checked here at all: their filter is reported as the kernel holds
//! it ([`LocalMemberships::set_filter`]).
//!
//! Kernel behaviour copied here:
//! - a second any-source join of a group is `EADDRINUSE`, as is an any-source join of a group
//!   joined source-specifically; leaving a group not joined is `EADDRNOTAVAIL`;
//! - the 21st group on a socket is `ENOBUFS` (`igmp_max_memberships` = 20), and so is the
//!   11th source of one group on one socket (`igmp_max_msf` = 10); the node as a whole has no
//!   such cap (an aggregate too long for a record is flooded as any-source);
//! - adding a source to an any-source membership turns it source-specific (the kernel allows
//!   a mode switch of an empty filter); dropping a source from one switches it too, to an
//!   empty source list, and fails with `EADDRNOTAVAIL`; dropping the last source leaves;
//! - a source operation on a group not joined at all is `EINVAL`, a repeated source
//!   `EADDRNOTAVAIL`; group addresses outside 224.0.0.0/4 are `EINVAL`; a multicast "source"
//!   is accepted and counts (it can never send).

use crate::record::{Membership, SourceFilter, MAX_SOURCES};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use thiserror::Error;
use weft_core::NodeId;

/// `net.ipv4.igmp_max_memberships` default.
pub const MAX_MEMBERSHIPS: usize = 20;
/// `net.ipv4.igmp_max_msf` default: sources per group per socket.
pub const MAX_SOCKET_SOURCES: usize = 10;

/// Names one application socket that joined groups. The daemon picks the value: the kernel
/// address it delivers that socket's datagrams to (`From<SocketAddrV4>`), or the socket's
/// inode when the kernel holds its memberships ([`SocketId::kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub u64);

impl From<SocketAddrV4> for SocketId {
    fn from(a: SocketAddrV4) -> Self {
        SocketId((u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()))
    }
}

impl SocketId {
    const KERNEL: u64 = 1 << 63;

    /// A socket whose memberships the kernel holds, by its inode.
    pub fn kernel(inode: u64) -> SocketId {
        SocketId(Self::KERNEL | (inode & !Self::KERNEL))
    }

    /// The inode of a [`SocketId::kernel`] socket.
    pub fn kernel_inode(self) -> Option<u64> {
        (self.0 & Self::KERNEL != 0).then_some(self.0 & !Self::KERNEL)
    }
}

/// Why a join or leave was refused; [`JoinError::errno`] is what the kernel returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum JoinError {
    #[error("{0} is not a multicast group address")]
    NotMulticast(NodeId),
    #[error("the socket already joined this group (or this source)")]
    AlreadyJoined,
    #[error("the socket has not joined this group (or this source)")]
    NotJoined,
    #[error("a source operation on a group the socket has not joined")]
    NoMembership,
    #[error("more than {MAX_MEMBERSHIPS} groups, or {MAX_SOCKET_SOURCES} sources of one group, on one socket")]
    TooMany,
}

impl JoinError {
    pub fn errno(self) -> i32 {
        match self {
            JoinError::NotMulticast(_) | JoinError::NoMembership => libc::EINVAL,
            JoinError::AlreadyJoined => libc::EADDRINUSE,
            JoinError::NotJoined => libc::EADDRNOTAVAIL,
            JoinError::TooMany => libc::ENOBUFS,
        }
    }
}

/// How a socket filters one group's sources (the kernel's `MCAST_INCLUDE`/`MCAST_EXCLUDE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterMode {
    Include,
    Exclude,
}

/// One socket's filter of one group. Any-source is `Exclude` with no sources; `Include` with
/// none is a membership that accepts nothing (what a failed source drop leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFilter {
    pub mode: FilterMode,
    pub sources: BTreeSet<NodeId>,
}

impl SocketFilter {
    pub fn any() -> SocketFilter {
        SocketFilter {
            mode: FilterMode::Exclude,
            sources: BTreeSet::new(),
        }
    }

    pub fn only(sources: impl IntoIterator<Item = NodeId>) -> SocketFilter {
        SocketFilter {
            mode: FilterMode::Include,
            sources: sources.into_iter().collect(),
        }
    }

    pub fn is_any(&self) -> bool {
        self.mode == FilterMode::Exclude && self.sources.is_empty()
    }

    pub fn accepts(&self, source: NodeId) -> bool {
        match self.mode {
            FilterMode::Include => self.sources.contains(&source),
            FilterMode::Exclude => !self.sources.contains(&source),
        }
    }
}

/// A change to one socket's memberships, as `setsockopt` asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipOp {
    /// Any-source join (`IP_ADD_MEMBERSHIP`, `MCAST_JOIN_GROUP`).
    Join(NodeId),
    /// Drop the whole membership (`IP_DROP_MEMBERSHIP`, `MCAST_LEAVE_GROUP`).
    Leave(NodeId),
    /// Add one source (`IP_ADD_SOURCE_MEMBERSHIP`, `MCAST_JOIN_SOURCE_GROUP`).
    AddSource { group: NodeId, source: NodeId },
    /// Drop one source (`IP_DROP_SOURCE_MEMBERSHIP`, `MCAST_LEAVE_SOURCE_GROUP`).
    DropSource { group: NodeId, source: NodeId },
}

impl MembershipOp {
    pub fn group(self) -> NodeId {
        match self {
            MembershipOp::Join(g) | MembershipOp::Leave(g) => g,
            MembershipOp::AddSource { group, .. } | MembershipOp::DropSource { group, .. } => group,
        }
    }
}

/// What one [`MembershipOp`] did: the program's answer, and whether the socket's filter of
/// the group changed (it can change even when the answer is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub result: Result<(), JoinError>,
    pub changed: bool,
}

impl Applied {
    fn fail(e: JoinError) -> Applied {
        Applied {
            result: Err(e),
            changed: false,
        }
    }

    fn done() -> Applied {
        Applied {
            result: Ok(()),
            changed: true,
        }
    }
}

/// One socket's memberships under the kernel's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memberships {
    groups: BTreeMap<NodeId, SocketFilter>,
}

impl Memberships {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn filter(&self, group: NodeId) -> Option<&SocketFilter> {
        self.groups.get(&group)
    }

    pub fn groups(&self) -> impl Iterator<Item = (NodeId, &SocketFilter)> + '_ {
        self.groups.iter().map(|(g, f)| (*g, f))
    }

    pub fn apply(&mut self, op: MembershipOp) -> Applied {
        let group = op.group();
        if !group.is_multicast() {
            return Applied::fail(JoinError::NotMulticast(group));
        }
        let full = self.groups.len() >= MAX_MEMBERSHIPS;
        match op {
            MembershipOp::Join(_) => {
                if self.groups.contains_key(&group) {
                    return Applied::fail(JoinError::AlreadyJoined);
                }
                if full {
                    return Applied::fail(JoinError::TooMany);
                }
                self.groups.insert(group, SocketFilter::any());
                Applied::done()
            }
            MembershipOp::Leave(_) => match self.groups.remove(&group) {
                Some(_) => Applied::done(),
                None => Applied::fail(JoinError::NotJoined),
            },
            MembershipOp::AddSource { source, .. } => match self.groups.get_mut(&group) {
                None if full => Applied::fail(JoinError::TooMany),
                None => {
                    self.groups.insert(group, SocketFilter::only([source]));
                    Applied::done()
                }
                Some(f) if f.is_any() => {
                    *f = SocketFilter::only([source]);
                    Applied::done()
                }
                // An exclude-mode filter (only the kernel makes those): the kernel refuses.
                Some(f) if f.mode == FilterMode::Exclude => Applied::fail(JoinError::NoMembership),
                Some(f) if f.sources.contains(&source) => Applied::fail(JoinError::NotJoined),
                Some(f) if f.sources.len() >= MAX_SOCKET_SOURCES => {
                    Applied::fail(JoinError::TooMany)
                }
                Some(f) => {
                    f.sources.insert(source);
                    Applied::done()
                }
            },
            MembershipOp::DropSource { source, .. } => {
                let Some(f) = self.groups.get_mut(&group) else {
                    return Applied::fail(JoinError::NoMembership);
                };
                if f.is_any() {
                    // The kernel switches the empty filter's mode before it finds nothing to
                    // drop.
                    *f = SocketFilter::only([]);
                    return Applied {
                        result: Err(JoinError::NotJoined),
                        changed: true,
                    };
                }
                if f.mode == FilterMode::Exclude || !f.sources.remove(&source) {
                    return Applied::fail(JoinError::NotJoined);
                }
                if f.sources.is_empty() {
                    self.groups.remove(&group);
                }
                Applied::done()
            }
        }
    }

    /// Replaces the socket's filter of `group` (`None`: not a member).
    pub fn set(&mut self, group: NodeId, filter: Option<SocketFilter>) {
        match filter {
            Some(f) => self.groups.insert(group, f),
            None => self.groups.remove(&group),
        };
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SocketState {
    memberships: Memberships,
    /// Per group, sticky for the life of the membership: some join on it asked for
    /// reliability.
    reliable: BTreeSet<NodeId>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LocalMemberships {
    sockets: BTreeMap<SocketId, SocketState>,
    /// group → the sockets holding a membership of it.
    groups: BTreeMap<NodeId, BTreeSet<SocketId>>,
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
        let op = match source {
            None => MembershipOp::Join(group),
            Some(source) => MembershipOp::AddSource { group, source },
        };
        let result = self.apply(socket, op);
        if result.is_ok() && reliable {
            if let Some(s) = self.sockets.get_mut(&socket) {
                s.reliable.insert(group);
            }
        }
        result
    }

    /// `source: None` drops the socket's whole membership of the group (as `IP_DROP_MEMBERSHIP`
    /// does even for a source-specific one); `Some(s)` drops one source.
    pub(crate) fn leave(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<(), JoinError> {
        let op = match source {
            None => MembershipOp::Leave(group),
            Some(source) => MembershipOp::DropSource { group, source },
        };
        self.apply(socket, op)
    }

    fn apply(&mut self, socket: SocketId, op: MembershipOp) -> Result<(), JoinError> {
        let state = self.sockets.entry(socket).or_default();
        let applied = state.memberships.apply(op);
        if applied.changed {
            self.settle(socket, op.group());
        } else if state.memberships.is_empty() {
            self.sockets.remove(&socket);
        }
        applied.result
    }

    /// Replaces one socket's filter of `group` with what the kernel holds (`None`: it left).
    pub(crate) fn set_filter(
        &mut self,
        socket: SocketId,
        group: NodeId,
        filter: Option<SocketFilter>,
        reliable: bool,
    ) {
        let state = self.sockets.entry(socket).or_default();
        let joined = filter.is_some();
        state.memberships.set(group, filter);
        if joined && reliable {
            state.reliable.insert(group);
        }
        self.settle(socket, group);
    }

    /// Keeps the group index and the sticky flags in step with one socket's filter.
    fn settle(&mut self, socket: SocketId, group: NodeId) {
        let Some(state) = self.sockets.get_mut(&socket) else {
            return;
        };
        if state.memberships.filter(group).is_some() {
            self.groups.entry(group).or_default().insert(socket);
            return;
        }
        state.reliable.remove(&group);
        if state.memberships.is_empty() {
            self.sockets.remove(&socket);
        }
        if let Some(members) = self.groups.get_mut(&group) {
            members.remove(&socket);
            if members.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    /// Drops every membership of a closed socket; returns the groups it had joined.
    pub(crate) fn close(&mut self, socket: SocketId) -> Vec<NodeId> {
        let Some(state) = self.sockets.remove(&socket) else {
            return Vec::new();
        };
        let groups: Vec<NodeId> = state.memberships.groups().map(|(g, _)| g).collect();
        for g in &groups {
            if let Some(members) = self.groups.get_mut(g) {
                members.remove(&socket);
                if members.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
        groups
    }

    fn joins(&self, group: NodeId) -> impl Iterator<Item = (SocketId, &SocketFilter, bool)> + '_ {
        self.groups
            .get(&group)
            .into_iter()
            .flatten()
            .filter_map(move |s| {
                let state = self.sockets.get(s)?;
                let f = state.memberships.filter(group)?;
                Some((*s, f, state.reliable.contains(&group)))
            })
    }

    /// The node's membership of `group`: any-source if any socket excludes rather than
    /// includes (its sources are filtered here, by the kernel or the daemon), else the union
    /// of the source lists (any-source when longer than a record holds); reliable if any
    /// socket asked; absent with no socket that accepts anything.
    pub(crate) fn aggregate(&self, group: NodeId) -> Membership {
        let mut reliable = false;
        let mut any = false;
        let mut union = BTreeSet::new();
        for (_, f, r) in self.joins(group) {
            reliable |= r;
            match f.mode {
                FilterMode::Exclude => any = true,
                // Multicast "sources" never send: they attract nothing.
                FilterMode::Include => union.extend(f.sources.iter().filter(|s| !s.is_multicast())),
            }
        }
        if any || union.len() > MAX_SOURCES {
            return Membership::Present {
                sources: SourceFilter::Any,
                reliable,
            };
        }
        if union.is_empty() {
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
        self.joins(group)
            .filter(move |(_, f, _)| f.accepts(source))
            .map(|(s, _, _)| s)
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
    use proptest::prelude::*;

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

    fn errno(m: &mut Memberships, op: MembershipOp) -> Result<(), i32> {
        m.apply(op).result.map_err(|e| e.errno())
    }

    /// The sequences probed on the kernel (tests/c/mcast_calls.c prints them), with its
    /// answers.
    #[test]
    fn answers_what_the_kernel_answered() {
        use MembershipOp::*;
        let mut m = Memberships::default();
        let add = |source| AddSource { group: G, source };
        let drop = |source| DropSource { group: G, source };
        assert_eq!(errno(&mut m, Join(S1)), Err(libc::EINVAL));
        assert_eq!(errno(&mut m, Join(G)), Ok(()));
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        // Source on an any-source membership: switches to source-specific.
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        // Dropping the only source leaves the group.
        assert_eq!(errno(&mut m, drop(S1)), Ok(()));
        assert_eq!(errno(&mut m, Leave(G)), Err(libc::EADDRNOTAVAIL));
        // Dropping a source of a fresh any-source membership: EADDRNOTAVAIL, and the
        // membership is now an empty source list (still joined).
        assert_eq!(errno(&mut m, Join(G)), Ok(()));
        let a = m.apply(drop(S1));
        assert_eq!(a.result, Err(JoinError::NotJoined));
        assert!(a.changed, "the failed drop still switched the mode");
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        assert_eq!(errno(&mut m, Leave(G)), Ok(()));
        // Source-specific joins.
        assert_eq!(errno(&mut m, add(S1)), Ok(()));
        assert_eq!(errno(&mut m, add(S1)), Err(libc::EADDRNOTAVAIL));
        assert_eq!(errno(&mut m, Join(G)), Err(libc::EADDRINUSE));
        assert_eq!(
            errno(
                &mut m,
                AddSource {
                    group: NodeId(0x0a01_0203),
                    source: S1
                }
            ),
            Err(libc::EINVAL)
        );
        assert_eq!(errno(&mut m, drop(S2)), Err(libc::EADDRNOTAVAIL));
        assert_eq!(
            errno(
                &mut m,
                DropSource {
                    group: NodeId(0xef01_0209),
                    source: S2
                }
            ),
            Err(libc::EINVAL)
        );
        // A multicast "source" is accepted (and counts).
        assert_eq!(errno(&mut m, add(NodeId(0xef00_0001))), Ok(()));
        for i in 3..11 {
            assert_eq!(errno(&mut m, add(NodeId(0x0a00_0000 + i))), Ok(()));
        }
        assert_eq!(
            errno(&mut m, add(NodeId(0x0a00_000b))),
            Err(libc::ENOBUFS),
            "the 11th source"
        );
        assert_eq!(errno(&mut m, Leave(G)), Ok(()));
        for i in 0..20 {
            assert_eq!(errno(&mut m, Join(NodeId(0xef02_0000 + i))), Ok(()));
        }
        assert_eq!(
            errno(&mut m, Join(NodeId(0xef02_0014))),
            Err(libc::ENOBUFS),
            "the 21st group"
        );
        assert_eq!(errno(&mut m, add(S1)), Err(libc::ENOBUFS));
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
    fn kernel_filters_are_stored_as_reported() {
        let mut local = LocalMemberships::default();
        let k = SocketId::kernel(77);
        assert_eq!(k.kernel_inode(), Some(77));
        assert_eq!(A.kernel_inode(), None);
        let exclude = SocketFilter {
            mode: FilterMode::Exclude,
            sources: BTreeSet::from([S1]),
        };
        local.set_filter(k, G, Some(exclude), false);
        assert!(local.aggregate(G).is_present());
        assert_eq!(local.receivers(G, S2).collect::<Vec<_>>(), vec![k]);
        assert!(local.receivers(G, S1).next().is_none(), "S1 is blocked");
        local.set_filter(k, G, None, false);
        assert_eq!(local.aggregate(G), Membership::Absent);
    }

    #[test]
    fn the_node_has_no_source_cap() {
        let mut local = LocalMemberships::default();
        for i in 0..=MAX_SOURCES as u64 {
            local
                .join(SocketId(i), G, Some(NodeId(0x0a00_0000 + i as u32)), false)
                .expect("join");
        }
        assert_eq!(
            local.aggregate(G),
            Membership::Present {
                sources: SourceFilter::Any,
                reliable: false
            },
            "a union longer than a record holds is flooded as any-source"
        );
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

    fn op_strategy() -> impl Strategy<Value = MembershipOp> {
        let group = prop_oneof![Just(G), Just(NodeId(0xef01_0002)), Just(S1)];
        let source = prop_oneof![Just(S1), Just(S2), Just(NodeId(0xef09_0909))];
        (0u8..4, group, source).prop_map(|(k, group, source)| match k {
            0 => MembershipOp::Join(group),
            1 => MembershipOp::Leave(group),
            2 => MembershipOp::AddSource { group, source },
            _ => MembershipOp::DropSource { group, source },
        })
    }

    proptest! {
        /// The node's aggregate always agrees with what its sockets accept: a source some
        /// socket accepts is accepted by the node's record, and a group no socket holds is
        /// absent.
        #[test]
        fn aggregate_covers_every_socket(ops in proptest::collection::vec((0u64..3, op_strategy()), 0..60)) {
            let mut local = LocalMemberships::default();
            for (socket, op) in ops {
                let _ = local.apply(SocketId(socket), op);
            }
            for group in [G, NodeId(0xef01_0002)] {
                let agg = local.aggregate(group);
                for source in [S1, S2] {
                    if local.receivers(group, source).next().is_some() {
                        prop_assert!(agg.accepts(source), "{group} from {source}: {agg:?}");
                    }
                }
                if local.sockets_in(group) == 0 {
                    prop_assert_eq!(agg, Membership::Absent);
                }
            }
        }
    }
}
